-- RegisterCustomer commands: POST /v1/customers, a distinct body per request.
dofile(os.getenv("CRM_BENCH_WRK") .. "/report.lua")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CRM_BENCH_KEY")
local threads, n = 0, 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function request()
  n = n + 1
  return wrk.format(nil, "/v1/customers", nil,
    string.format('{"name":"Bench %d-%d","email":"b%d.%d@example.com","region":"North"}', tid, n, tid, n))
end
