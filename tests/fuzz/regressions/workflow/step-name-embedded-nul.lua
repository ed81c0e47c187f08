local sy = require "switchyard"
return sy.workflow {
  name = "w", start = "a",
  steps = { ["a\0"] = sy.task { run = function() end } },
}
