-- wrk reporting hook for loadtest/compare: prints one JSON line that the
-- script parses (requests, duration, latency percentiles in microseconds,
-- errors).  Closed-loop latencies suffer from coordinated omission; the
-- open-loop (oha) scenarios are the ones to read latency from.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nLOADTEST_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
