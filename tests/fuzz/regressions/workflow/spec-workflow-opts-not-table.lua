local sy = require "switchyard"
local w = sy.workflow { name = "w" }
w.opts = 1
return w
