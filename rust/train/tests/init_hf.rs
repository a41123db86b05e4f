//! A stage can start from a Hugging Face model folder (kormo_hf's import): `init = "hf:FOLDER"`
//! in the recipe or `--init-hf FOLDER`. Exported in f32, the folder holds exactly the weights
//! of the checkpoint it came from, so the stage trains exactly as if started from that checkpoint.

mod common;

use common::{options, run_error, scratch, small_recipe};
use kormo_hf::vocab::{byte_tokenizer, ModelTokenizer, TokenizerSource};
use kormo_hf::{export_folder, ExportDtype, ExportOptions, Flavor, Weights};
use kormo_train::trainer::run_stage;

#[test]
fn stage_starts_from_a_hugging_face_folder() {
    let recipe = small_recipe();
    let dir = scratch("hf-source");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(2);
    run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    let weights = Weights::from_checkpoint(&dir.join("pretrain1/final"), &recipe.model).unwrap();
    let folder = dir.join("hf-export");
    let tokenizer = ModelTokenizer {
        tokenizer: byte_tokenizer(),
        source: TokenizerSource::ByteVocab,
    };
    for flavor in [Flavor::Kormo, Flavor::Llama] {
        let export = ExportOptions {
            flavor,
            dtype: ExportDtype::F32,
            ..ExportOptions::default()
        };
        export_folder(
            &weights,
            &tokenizer,
            &folder.join(flavor.model_type()),
            &export,
        )
        .unwrap();
    }

    // Reference: pretrain2 from pretrain1's final checkpoint (its recipe init).
    let mut opts = options("pretrain2", &dir);
    opts.max_steps = Some(3);
    let reference = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    let losses = |r: &kormo_train::trainer::StageReport| -> Vec<u64> {
        r.logged.iter().map(|m| m.loss.to_bits()).collect()
    };

    // --init-hf, with either naming.
    for flavor in [Flavor::Kormo, Flavor::Llama] {
        let run_dir = scratch(&format!("hf-flag-{}", flavor.model_type()));
        let mut opts = options("pretrain2", &run_dir);
        opts.max_steps = Some(3);
        opts.init_hf = Some(folder.join(flavor.model_type()));
        let mut out = Vec::new();
        let report = run_stage(&recipe, &opts, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("init: weights of Hugging Face folder"),
            "{text}"
        );
        assert_eq!(
            losses(&report),
            losses(&reference),
            "{}",
            flavor.model_type()
        );
    }

    // init = "hf:FOLDER" in the recipe.
    let mut from_recipe = recipe.clone();
    from_recipe.file.stages.pretrain2.init =
        format!("hf:{}", folder.join(Flavor::Kormo.model_type()).display());
    let run_dir = scratch("hf-recipe");
    let mut opts = options("pretrain2", &run_dir);
    opts.max_steps = Some(3);
    let report = run_stage(&from_recipe, &opts, &mut std::io::sink()).unwrap();
    assert_eq!(losses(&report), losses(&reference));

    // A folder of another model shape is refused, naming config.json and the field.
    let mut bigger = from_recipe.clone();
    bigger.model.ffn = 96;
    let err = run_error(&bigger, &opts);
    assert!(
        err.contains("config.json") && err.contains("ffn: folder 64, recipe 96"),
        "{err}"
    );
    let mut opts = options("pretrain2", &run_dir);
    opts.init_hf = Some(run_dir.join("no-such-folder"));
    let err = run_error(&recipe, &opts);
    assert!(err.contains("no-such-folder"), "{err}");
}

/// With `[model] mtp_depth >= 1` a Hugging Face folder (which has no MTP heads) gives the trunk
/// and next-token head; the MTP heads start fresh, and the run says so. The first step's
/// next-token loss is that of the folder's model, as for the plain recipe.
#[test]
fn an_mtp_stage_starts_from_a_hugging_face_folder_with_fresh_heads() {
    let recipe = small_recipe();
    let dir = scratch("hf-mtp");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(2);
    run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    let weights = Weights::from_checkpoint(&dir.join("pretrain1/final"), &recipe.model).unwrap();
    let folder = dir.join("hf-export");
    let tokenizer = ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::ByteVocab };
    let export = ExportOptions { dtype: ExportDtype::F32, ..ExportOptions::default() };
    export_folder(&weights, &tokenizer, &folder, &export).unwrap();

    let mut mtp = recipe.clone();
    mtp.model.mtp_depth = 2;
    let first_loss = |recipe: &kormo_train::recipe::Recipe, name: &str| {
        let mut opts = options("pretrain2", &dir.join(name));
        opts.max_steps = Some(2);
        opts.init_hf = Some(folder.clone());
        let mut out = Vec::new();
        let report = run_stage(recipe, &opts, &mut out).unwrap();
        (report.logged[0].loss.to_bits(), report.logged[0].mtp_loss, String::from_utf8(out).unwrap())
    };
    let (plain_loss, plain_mtp, _) = first_loss(&recipe, "plain");
    let (mtp_loss, mtp_mtp, text) = first_loss(&mtp, "mtp");
    assert!(text.contains("the 2 multi-token-prediction head(s) start fresh"), "{text}");
    assert_eq!(mtp_loss, plain_loss);
    assert!(plain_mtp.is_none() && mtp_mtp.is_some_and(f64::is_finite));
}
