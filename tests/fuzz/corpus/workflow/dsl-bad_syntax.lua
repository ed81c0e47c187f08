local sy = require "switchyard"

return sy.workflow {
  name = "bad_syntax",
  start = "a",
  steps = {
    a = sy.task { run = function(ctx) ctx.vars.x = = 1 end }, --@line
  },
}
