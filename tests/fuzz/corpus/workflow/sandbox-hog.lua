-- A step that allocates without bound.
local sy = require "switchyard"

return sy.workflow {
  name = "hog",
  start = "grow",
  steps = {
    grow = sy.task {
      run = function(ctx)
        local t, i = {}, 0
        while true do
          i = i + 1
          t[i] = string.rep("x", 1024) .. i
        end
      end,
      retries = 0,
    },
  },
}
