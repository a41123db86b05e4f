//! kormo-train
