//! pointsman: a semantic LLM router.
//!
//! Data flows one way:
//! route files ─[`config`]→ [`config::RouteTable`] ─[`embed`]→ vectors ─[`index`]→ artifact on disk;
//! prompt ─[`server`]/[`cli`]→ [`engine`]: embed, search the [`index`], [`policy::decide`] → decision.

pub mod budget;
pub mod cli;
pub mod config;
pub mod decision_log;
pub mod embed;
pub mod engine;
pub mod eval;
pub mod index;
pub mod indexer;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod scoring;
pub mod selection;
pub mod server;
pub mod similarity;
