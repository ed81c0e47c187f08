local sy = require "switchyard"
string.rep("a", 40):find(string.rep("a-", 20) .. "b")
return sy.workflow { name = "w", start = "a", steps = { a = sy.task { run = function() end } } }
