//! Benchmarks for mde: loaders for the official files, scorers identical to the official tools,
//! inference runners and bad-case mining.
// Module list is pre-declared so parallel work on separate files compiles.

pub mod aokvqa;
pub mod badcase;
pub mod matching;
pub mod mmbench;
pub mod mme;
pub mod paths;
pub mod report;
pub mod runner;
pub mod seedbench;
pub mod tsv;
