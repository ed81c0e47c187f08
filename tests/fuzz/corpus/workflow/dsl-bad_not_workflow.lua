-- Returns a plain table shaped like a workflow, not sy.workflow{}.
local sy = require "switchyard"

return {
  name = "bad_not_workflow",
  start = "a",
  steps = { a = sy.task { run = function(ctx) end } },
}
