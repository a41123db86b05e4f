//! kormo-dist
