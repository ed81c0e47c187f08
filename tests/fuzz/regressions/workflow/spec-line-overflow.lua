local sy = require "switchyard"
local a = sy.task { run = function() end, next = "b" }
local b = sy.task { run = function() end }
a.line = -2147483648
b.line = 2147483647
return sy.workflow { name = "w", start = "a", steps = { a = a, b = b } }
