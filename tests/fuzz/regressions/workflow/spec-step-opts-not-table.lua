local sy = require "switchyard"
local t = sy.task { run = function() end }
t.opts = 5
return sy.workflow { name = "w", start = "a", steps = { a = t } }
