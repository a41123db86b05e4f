//! kormo-cpu
