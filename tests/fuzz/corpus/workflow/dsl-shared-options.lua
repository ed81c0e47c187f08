-- Steps built by a helper from shared option tables, specs kept in locals
-- and the definition table assembled before sy.workflow sees it.
local sy = require "switchyard"

local function retrying(opts, n)
  opts.retries = n
  opts.backoff = { initial = 0.5, factor = 2, max = 10 }
  return sy.task(opts)
end

local base = { run = function(ctx) ctx.vars.n = (ctx.vars.n or 0) + 1 end }
local first = retrying(base, 2)
base.next = "route"

local route = sy.choose_version {
  flag = "shapes", key = "user_id", v1 = "last", v2 = "last2",
  strategy = "sticky", on_missing_key = "v1",
  eligible = function(ctx) return ctx.vars.n > 0 end,
}

local def = { name = "shapes", start = "first", steps = {} }
def.steps.first = first
def.steps.route = route
def.steps.last = sy.task { run = function(ctx) end, timeout = 30 }
def.steps.last2 = sy.task {
  run = function(ctx) end,
  next = function(ctx) return nil end,
}
return sy.workflow(def)
