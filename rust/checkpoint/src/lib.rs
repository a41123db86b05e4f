//! kormo-checkpoint
