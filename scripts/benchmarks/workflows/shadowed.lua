-- The shadow benchmark's workflow: v1 and v2 each wait 20 ms (as a call to
-- an outside API would) and give the same verdict; with `rollout shadow sh
-- 100%` every instance also runs b in shadow beside a.
local sy = require "switchyard"
local function call(ctx)
  ctx.sleep(0.02)
  ctx.vars.verdict = #ctx.vars.user_id % 2 == 0
end
return sy.workflow {
  name = "shadowed",
  start = "route",
  steps = {
    route = sy.choose_version {
      flag = "sh", key = "user_id", v1 = "a", v2 = "b",
      shadow = { compare = { "verdict" }, timeout = 2 },
    },
    a = sy.task { run = call, next = "done" },
    b = sy.task { run = call, next = "done", shadow_safe = true },
    done = sy.task { run = function(ctx) ctx.vars.done = true end },
  },
}
