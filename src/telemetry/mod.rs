//! Observability: metric names ([`names`]), per-worker metric shards and
//! latency histograms merged on scrape ([`metrics`], [`histogram`]), the
//! access log written off the workers ([`access_log`]) and W3C trace
//! context ([`trace`]).

pub mod access_log;
pub mod histogram;
pub mod metrics;
pub mod names;
pub mod trace;
