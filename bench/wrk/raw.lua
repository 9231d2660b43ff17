-- The raw HTTP baseline: GET /health/live (no database work), same server, same settings.
dofile(os.getenv("CRM_BENCH_WRK") .. "/report.lua")
function request()
  return wrk.format("GET", "/health/live")
end
