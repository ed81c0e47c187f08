local T = require "switchyard.testing"
local D = require "testdb"
describe("smoke", function()
  it("runs hello", function()
    local db = D.new()
    local e = T.engine{ db = db }
    local id = assert(e:start("hello", { user_id = "u1" }))
    local st = e:run()
    assert.are.equal(1, st.completed)
    local i = e:instance(id)
    assert.are.equal("completed", i.state)
    assert.are.equal("hi u1", i.vars.greeting)
    e:close()
    D.remove(db)
  end)
end)
