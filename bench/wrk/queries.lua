-- Customer 360 lookups: GET /v1/customers/{id} over ids read from CRM_BENCH_IDS, at random.
dofile(os.getenv("CRM_BENCH_WRK") .. "/report.lua")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CRM_BENCH_KEY")
local ids = {}
for line in io.lines(os.getenv("CRM_BENCH_IDS")) do ids[#ids + 1] = line end
function request()
  return wrk.format("GET", "/v1/customers/" .. ids[math.random(#ids)])
end
