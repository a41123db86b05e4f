//! The train crate's one error type: a message for the user, naming the file, key or rank.

/// A user-facing error; `train` prints it and exits with code 2.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainError(pub String);

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TrainError {}

macro_rules! into_train_error {
    ($($t:ty),*) => {$(
        impl From<$t> for TrainError {
            fn from(e: $t) -> Self {
                TrainError(e.to_string())
            }
        }
    )*};
}
into_train_error!(
    crate::recipe::RecipeError,
    kormo_data::DataError,
    kormo_checkpoint::CheckpointError,
    kormo_dist::DistError,
    kormo_dist::CommError,
    kormo_model::ModelError,
    kormo_optim::OptimError,
    String
);
