-- No plugin provides a node type called "nosuch".
local sy = require "switchyard"

return sy.workflow {
  name = "bad_node_type",
  start = "a",
  steps = {
    a = sy.task { run = function(ctx) end, next = "b" },
    b = sy.nosuch { next = "a" }, --@line
  },
}
