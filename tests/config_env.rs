//! Environment overrides of the rules file. In a binary of its own: figment's `Jail` sets
//! process-wide variables, which would leak into the parallel tests (and child processes) of
//! tests/config.rs.
#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error

use std::path::Path;

use qscale::config;

#[test]
fn environment_overrides_defaults_and_single_rules() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("QSCALE_DEFAULTS__COOLDOWN", "42s");
        jail.set_env("QSCALE_RULE_ORDERS_WORKER__MAX_REPLICAS", "33");
        jail.set_env(
            "QSCALE_RULE_ORDERS_WORKER__SCALE_DOWN__STABILIZATION_WINDOW",
            "3m",
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let file = config::load_file(&root.join("config/rules.example.toml")).expect("valid");
        let orders = &file.rules[0];
        assert_eq!(orders.max_replicas, 33);
        assert_eq!(orders.cooldown.to_string(), "42s");
        assert_eq!(orders.scale_down_window().to_string(), "3m");
        // Only the named rule changes; every rule without its own cooldown gets the default.
        assert_eq!(file.rules[1].max_replicas, 8);
        assert_eq!(file.rules[2].cooldown.to_string(), "42s");
        Ok(())
    });
}

#[test]
fn bad_environment_override_names_the_rule() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("QSCALE_RULE_ORDERS_WORKER__MAX_REPLICAS", "lots");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let error = config::load_file(&root.join("config/rules.example.toml")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("rule \"orders-worker\""), "{text}");
        assert!(text.contains("max_replicas"), "{text}");
        Ok(())
    });
}
