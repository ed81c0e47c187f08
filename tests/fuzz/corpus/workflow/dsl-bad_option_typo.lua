local sy = require "switchyard"

return sy.workflow {
  name = "bad_option_typo",
  start = "a",
  steps = {
    a = sy.task { run = function(ctx) end, next = "b" },
    b = sy.task { --@line
      run = function(ctx) end,
      retires = 3,
    },
  },
}
