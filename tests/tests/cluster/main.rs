//! Multi-node tests: three `strata-test-node` processes on loopback, peer traffic over mutual
//! TLS through proxies the tests cut, nodes killed with SIGKILL.
//!
//! Numbered cases by area: t30–t39 replication (`replication`, and t36 in `groups`),
//! t40–t49 aggregations, t50–t59 search, t60–t69 security, t70–t71 the randomized fault suite (`faults`); `support` holds the helpers they
//! share.

#![allow(clippy::unwrap_used)]

mod aggregations;
mod faults;
mod faults_check;
mod groups;
mod replication;
mod search;
mod security;
mod support;
