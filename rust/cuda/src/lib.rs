//! kormo-cuda
