//! What the trainer says at the end of a stage and on the way: the same words at every world
//! size, a `next:` command that loads the recipe that ran, each event printed once.

mod common;

use common::{options, repo, scratch, small_recipe};
use kormo_train::recipe::Recipe;
use kormo_train::trainer::{run_stage, RunOptions};

fn run_text(recipe: &Recipe, opts: &RunOptions) -> String {
    let mut out = Vec::new();
    run_stage(recipe, opts, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn resuming_a_finished_stage_says_so_at_every_world_size() {
    let recipe = small_recipe();
    for world_size in [1, 2] {
        let dir = scratch(&format!("finished-{world_size}"));
        let mut opts = options("pretrain1", &dir);
        opts.max_steps = Some(3);
        opts.world_size = world_size;
        let first = run_text(&recipe, &opts);
        assert!(
            first.contains("done: 3 steps"),
            "world size {world_size}: {first}"
        );
        let again = run_text(&recipe, &opts.clone().with_resume());
        let expected = format!(
            "stage pretrain1 was already complete: {}",
            dir.join("pretrain1/final").display()
        );
        assert!(
            again.contains(&expected),
            "world size {world_size}: {again}"
        );
        assert!(!again.contains("done:"), "world size {world_size}: {again}");
        assert!(
            again.contains("next: tools/bazel run //rust:train -- --stage=pretrain2"),
            "{again}"
        );
    }
}

#[test]
fn the_next_hint_loads_the_recipe_that_ran() {
    // A recipe file whose `name` is not a preset: the hint must name the file.
    let dir = scratch("next-hint");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo().join("tests/recipes/test-small.toml"))
        .unwrap()
        .replacen("name = \"test-small\"", "name = \"gen\"", 1);
    let path = dir.join("my recipe.toml");
    std::fs::write(&path, text).unwrap();
    let recipe = Recipe::load(&path).unwrap();
    let mut opts = options("pretrain1", &dir.join("run"));
    opts.max_steps = Some(2);
    let out = run_text(&recipe, &opts);
    let next = out
        .lines()
        .find(|l| l.starts_with("next: "))
        .expect("a next: line");
    let quoted = format!("--config='{}'", path.display());
    assert!(
        next.ends_with(&format!("--stage=pretrain2 {quoted}")),
        "{next}"
    );
    // What the shell passes on loads the same recipe.
    let arg = path.display().to_string();
    assert_eq!(Recipe::resolve(&arg, &repo()).unwrap().file, recipe.file);
    assert_eq!(Recipe::resolve("tiny", &repo()).unwrap().config_arg(), None);
    assert_eq!(
        Recipe::resolve("proxy-1b", &repo())
            .unwrap()
            .config_arg()
            .as_deref(),
        Some("proxy-1b")
    );
}
