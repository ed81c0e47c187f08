-- Identity verification through an external API, VerifyMeNow, while its
-- vendor replaces v1 by v2: the choose_version node sends a share of
-- subjects (the rate of the flag "verifymenow-v2") to v2, sticky per
-- subject, and every instance records which version it used, so
-- `switchyard report verifymenow-v2` can say which one fails less.
--
-- Vars in: subject (who is verified), document (what is checked), and
-- optionally api_base (default http://127.0.0.1:8089) and request_id.
-- Vars out: api_version, verified, score, decision (approved,
-- manual_review, rejected), notified.
local sy = require "switchyard"

local DEFAULT_API = "http://127.0.0.1:8089"

local function api(ctx, path)
  return (ctx.vars.api_base or DEFAULT_API) .. path
end

-- One version of the call. A 5xx or a transport error (refused, timed
-- out) raises: the engine retries with backoff and raises an incident
-- when retries run out. A 4xx is the API's answer about the document, a
-- business outcome rather than a fault.
local function verify(version)
  return function(ctx)
    local v = ctx.vars
    local r = ctx.http {
      method = "POST",
      url = api(ctx, "/" .. version .. "/verify"),
      json = { request_id = v.request_id, document = v.document,
               subject = v.subject },
      timeout = 1.5,
    }
    if r.status >= 500 then
      error(("VerifyMeNow %s answered %d"):format(version, r.status))
    end
    v.api_version = version
    if r.status >= 400 then
      v.verified = false
      v.rejection = r.json and r.json.error or ("HTTP " .. r.status)
      return
    end
    v.verified = r.json.verified == true
    v.score = r.json.score
  end
end

local CALL = { retries = 2, backoff = { initial = 0.05, factor = 2, max = 1 } }

return sy.workflow {
  name = "verify_identity",
  start = "receive",
  steps = {
    -- Checks the request; a request that cannot be verified at all is an
    -- incident at once (no retry can fix it).
    receive = sy.task {
      run = function(ctx)
        local v = ctx.vars
        if type(v.subject) ~= "string" or v.subject == "" then
          error("the request has no subject")
        end
        if type(v.document) ~= "string" or v.document == "" then
          error("the request has no document")
        end
        v.request_id = v.request_id or ("req-" .. ctx.instance_id)
      end,
      retries = 0,
      next = "route",
    },
    route = sy.choose_version {
      flag = "verifymenow-v2",
      key = "subject",
      v1 = "verify_v1",
      v2 = "verify_v2",
      -- `rollout shadow verifymenow-v2 RATE`: that share of v1's subjects
      -- also asks v2 (its answer is dropped), and `report --shadow` says
      -- how often the two disagree on these vars.
      shadow = { compare = { "verified", "score" }, timeout = 2 },
    },
    verify_v1 = sy.task { run = verify("v1"), retries = CALL.retries,
                          backoff = CALL.backoff, next = "decide" },
    -- shadow_safe: asking v2 beside v1 changes nothing of the subject's
    -- (a verification is a read; its Idempotency-Key ends in -shadow).
    verify_v2 = sy.task { run = verify("v2"), retries = CALL.retries,
                          backoff = CALL.backoff, next = "decide",
                          shadow_safe = true },
    decide = sy.task {
      run = function(ctx)
        local v = ctx.vars
        if not v.verified then
          v.decision = "rejected"
        elseif (v.score or 0) >= 0.5 then
          v.decision = "approved"
        else
          v.decision = "manual_review"
        end
      end,
      next = "notify",
    },
    -- A soft dependency: the customer is told by other means if this
    -- fails, so a failure is recorded and the instance still completes.
    notify = sy.task {
      run = function(ctx)
        local v = ctx.vars
        local ok, r = pcall(ctx.http, {
          method = "POST",
          url = api(ctx, "/notify"),
          json = { request_id = v.request_id, subject = v.subject,
                   decision = v.decision },
          timeout = 1,
        })
        v.notified = ok and r.status < 300
        if not v.notified then
          v.notify_error = ok and ("HTTP " .. r.status) or tostring(r)
        end
      end,
    },
  },
}
