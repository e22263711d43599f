//! Where the main publisher's frames come from: `emoji-epochs` and `emoji-trends` (`kafka`), or
//! a Kafka-free synthetic source for benchmarks (`synthetic`).

pub mod kafka;
pub mod synthetic;
