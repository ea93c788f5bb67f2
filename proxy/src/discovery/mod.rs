//! Where endpoint addresses come from, besides config that names them outright.

pub mod dns;
