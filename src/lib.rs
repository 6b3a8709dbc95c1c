//! pointsman: a semantic LLM router.
//!
//! Data flows one way (see `ARCHITECTURE.md`):
//! route files ─[`config`]→ [`config::RouteTable`] ─[`embed`]→ vectors ─[`index`]→ artifact on
//! disk; one request ─[`server`] / [`cli`] / [`eval`]→ [`dispatch`]: rules, [`engine`] (embed,
//! search, [`scoring`]), [`policy`], [`selection`] and [`budget`] → a finished decision.

pub mod budget;
pub mod cli;
pub mod config;
pub mod decision_log;
pub mod dispatch;
pub mod embed;
pub mod engine;
pub mod eval;
pub mod health;
pub mod index;
pub mod indexer;
pub mod metrics;
pub mod policy;
pub mod proxy_config;
pub mod quality;
pub mod scoring;
pub mod selection;
pub mod server;
pub mod session;
pub mod similarity;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod wire;
