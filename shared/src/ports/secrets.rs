//! Secrets from AWS Secrets Manager, fetched once per execution environment at
//! init, never through plaintext environment variables.
//!
//! On AWS a function's environment names its secrets by ARN; at cold start
//! [`resolve`] reads each named secret once (concurrently, one
//! `GetSecretValue` per distinct ARN) and turns them into the same settings
//! the rest of the configuration reads, held in memory only:
//!
//! | variable                        | secret's JSON keys         | provides                                |
//! |---------------------------------|----------------------------|-----------------------------------------|
//! | `DATABASE_SECRET_ARN`           | `username`, `password`     | `DATABASE_URL` (with `DATABASE_HOST`, `DATABASE_PORT`, `DATABASE_NAME`) |
//! | `DATABASE_MIGRATION_SECRET_ARN` | `username`, `password`     | `DATABASE_MIGRATION_URL` (the schema owner; the scheduler only) |
//! | `STRIPE_SECRET_ARN`             | `secret_key`, `webhook_secret` | `STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET` |
//! | `GALLERY_VIEW_KEY_SECRET_ARN`   | `view_key`                 | `GALLERY_VIEW_KEY`                      |
//! | `GENERATOR_SECRET_ARN`          | `username`, `password`     | basic-auth credentials added to `GENERATOR_PRIMARY_URL` and `GENERATOR_SECONDARY_URL` |
//!
//! Setting both a secret's ARN and the plaintext variable it provides is a
//! configuration error (which one wins would be a guess). Locally and in tests
//! the plaintext variables are used directly and no SDK is loaded.
//!
//! The values are cached for the life of the execution environment (one
//! request per secret per cold start, nothing on the request path): a changed
//! secret reaches new execution environments at once and running ones when
//! they are recycled. For the database password that means a rotation must
//! keep the old password valid until the functions have been updated; the
//! README's "Rotating the database password" gives the procedure.

use std::collections::{BTreeMap, HashMap};

use aws_config::SdkConfig;
use serde_json::Value;

/// Why the secrets cannot be resolved; each names the variable and, where it
/// applies, the secret's key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secret named by {variable}: {reason}")]
    Fetch {
        variable: &'static str,
        reason: String,
    },
    #[error("the secret named by {variable} is not a JSON object with a string `{key}`")]
    MissingKey {
        variable: &'static str,
        key: &'static str,
    },
    #[error("{variable} is required with {with}")]
    Missing {
        variable: &'static str,
        with: &'static str,
    },
    #[error("set {secret} or {plain}, not both")]
    Both {
        secret: &'static str,
        plain: &'static str,
    },
    #[error("{variable} is invalid: {reason}")]
    Invalid {
        variable: &'static str,
        reason: String,
    },
}

/// The variables that name secrets.
pub const SECRET_VARIABLES: [&str; 5] = [
    "DATABASE_SECRET_ARN",
    "DATABASE_MIGRATION_SECRET_ARN",
    "STRIPE_SECRET_ARN",
    "GALLERY_VIEW_KEY_SECRET_ARN",
    "GENERATOR_SECRET_ARN",
];

/// Settings resolved from secrets, consulted before the process environment.
#[derive(Default, Clone)]
pub struct SecretSettings {
    values: HashMap<&'static str, String>,
}

impl std::fmt::Debug for SecretSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.values.keys().collect();
        names.sort();
        f.debug_struct("SecretSettings")
            .field("provides", &names)
            .finish()
    }
}

impl SecretSettings {
    /// The value of `name` if a secret provided it.
    pub fn get(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    /// Whether no secret was named.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A lookup for [`crate::kernel::config::Config::from_lookup`]: these settings
    /// first, then `fallback` (the process environment).
    pub fn overlay<'a>(
        &'a self,
        fallback: impl Fn(&str) -> Option<String> + 'a,
    ) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| self.get(name).or_else(|| fallback(name))
    }
}

/// Where secret values come from: Secrets Manager on AWS (and moto in tests).
pub trait SecretSource {
    /// The secret's `SecretString`.
    fn fetch(&self, arn: &str) -> impl std::future::Future<Output = Result<String, String>> + Send;
}

/// Secrets Manager through the AWS SDK.
pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManager {
    pub fn new(sdk_config: &SdkConfig) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(sdk_config),
        }
    }
}

impl SecretSource for SecretsManager {
    async fn fetch(&self, arn: &str) -> Result<String, String> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(arn)
            .send()
            .await
            .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())?;
        output.secret_string().map(str::to_string).ok_or_else(|| {
            "the secret has no SecretString (binary secrets are not supported)".into()
        })
    }
}

/// Whether `lookup` names any secret, i.e. whether [`resolve`] has work to do
/// (and the SDK must be loaded for it).
pub fn any_named(lookup: &impl Fn(&str) -> Option<String>) -> bool {
    SECRET_VARIABLES
        .iter()
        .any(|name| non_empty(lookup, name).is_some())
}

fn non_empty(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Reads every secret `lookup` names from `source`, once per distinct ARN,
/// and derives the settings they provide.
pub async fn resolve(
    lookup: impl Fn(&str) -> Option<String>,
    source: &impl SecretSource,
) -> Result<SecretSettings, SecretsError> {
    let named: BTreeMap<&'static str, String> = SECRET_VARIABLES
        .iter()
        .filter_map(|&name| non_empty(&lookup, name).map(|arn| (name, arn)))
        .collect();
    for (secret, plain) in [
        ("DATABASE_SECRET_ARN", "DATABASE_URL"),
        ("DATABASE_MIGRATION_SECRET_ARN", "DATABASE_MIGRATION_URL"),
        ("STRIPE_SECRET_ARN", "STRIPE_SECRET_KEY"),
        ("STRIPE_SECRET_ARN", "STRIPE_WEBHOOK_SECRET"),
        ("GALLERY_VIEW_KEY_SECRET_ARN", "GALLERY_VIEW_KEY"),
    ] {
        if named.contains_key(secret) && non_empty(&lookup, plain).is_some() {
            return Err(SecretsError::Both { secret, plain });
        }
    }

    // One request per distinct ARN (the database secrets may be the same).
    let mut arns: Vec<&str> = named.values().map(String::as_str).collect();
    arns.sort_unstable();
    arns.dedup();
    let fetched = futures::future::join_all(arns.iter().map(|arn| source.fetch(arn))).await;
    let by_arn: HashMap<&str, Result<String, String>> = arns.into_iter().zip(fetched).collect();
    let secret = |variable: &'static str| -> Result<Option<Secret>, SecretsError> {
        let Some(arn) = named.get(variable) else {
            return Ok(None);
        };
        match &by_arn[arn.as_str()] {
            Ok(text) => Ok(Some(Secret {
                variable,
                json: serde_json::from_str(text).unwrap_or(Value::Null),
            })),
            Err(reason) => Err(SecretsError::Fetch {
                variable,
                reason: reason.clone(),
            }),
        }
    };

    let mut values = HashMap::new();
    if let Some(login) = secret("DATABASE_SECRET_ARN")? {
        values.insert(
            "DATABASE_URL",
            database_url(&lookup, "DATABASE_SECRET_ARN", &login)?,
        );
    }
    if let Some(owner) = secret("DATABASE_MIGRATION_SECRET_ARN")? {
        values.insert(
            "DATABASE_MIGRATION_URL",
            database_url(&lookup, "DATABASE_MIGRATION_SECRET_ARN", &owner)?,
        );
    }
    if let Some(stripe) = secret("STRIPE_SECRET_ARN")? {
        values.insert("STRIPE_SECRET_KEY", stripe.key("secret_key")?);
        values.insert("STRIPE_WEBHOOK_SECRET", stripe.key("webhook_secret")?);
    }
    if let Some(view) = secret("GALLERY_VIEW_KEY_SECRET_ARN")? {
        values.insert("GALLERY_VIEW_KEY", view.key("view_key")?);
    }
    if let Some(generator) = secret("GENERATOR_SECRET_ARN")? {
        let username = generator.key("username")?;
        let password = generator.key("password")?;
        for variable in ["GENERATOR_PRIMARY_URL", "GENERATOR_SECONDARY_URL"] {
            if let Some(raw) = non_empty(&lookup, variable) {
                values.insert(
                    variable,
                    with_credentials(variable, &raw, &username, &password)?,
                );
            }
        }
    }
    Ok(SecretSettings { values })
}

struct Secret {
    variable: &'static str,
    json: Value,
}

impl Secret {
    fn key(&self, key: &'static str) -> Result<String, SecretsError> {
        self.json
            .get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or(SecretsError::MissingKey {
                variable: self.variable,
                key,
            })
    }
}

/// A tokio-postgres key=value connection string: every value single-quoted,
/// with `\` and `'` escaped, so any password is taken literally.
fn database_url(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    login: &Secret,
) -> Result<String, SecretsError> {
    let required = |name: &'static str| {
        non_empty(lookup, name).ok_or(SecretsError::Missing {
            variable: name,
            with: variable,
        })
    };
    let host = required("DATABASE_HOST")?;
    let name = required("DATABASE_NAME")?;
    let port = non_empty(lookup, "DATABASE_PORT").unwrap_or_else(|| "5432".into());
    if port.parse::<u16>().is_err() {
        return Err(SecretsError::Invalid {
            variable: "DATABASE_PORT",
            reason: format!("`{port}` is not a port number"),
        });
    }
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    Ok(format!(
        "host={} port={port} dbname={} user={} password={}",
        quote(&host),
        quote(&name),
        quote(&login.key("username")?),
        quote(&login.key("password")?),
    ))
}

fn with_credentials(
    variable: &'static str,
    raw: &str,
    username: &str,
    password: &str,
) -> Result<String, SecretsError> {
    let invalid = |reason: String| SecretsError::Invalid { variable, reason };
    let mut url = url::Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "carries credentials of its own while GENERATOR_SECRET_ARN provides them".into(),
        ));
    }
    url.set_username(username)
        .and_then(|()| url.set_password(Some(password)))
        .map_err(|()| invalid("cannot carry credentials".into()))?;
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that answers from a map, for the derivation rules; the SDK
    /// path is tested against moto in `shared/tests/secrets.rs`.
    struct Fixed(HashMap<&'static str, &'static str>);

    impl SecretSource for Fixed {
        async fn fetch(&self, arn: &str) -> Result<String, String> {
            self.0
                .get(arn)
                .map(|v| v.to_string())
                .ok_or_else(|| format!("ResourceNotFoundException: {arn}"))
        }
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[tokio::test]
    async fn a_database_secret_becomes_a_connection_string_that_keeps_any_password() {
        let source = Fixed(HashMap::from([(
            "arn:db",
            r#"{"username":"app_login","password":"p'a\\ss word@/"}"#,
        )]));
        let settings = resolve(
            env(&[
                ("DATABASE_SECRET_ARN", "arn:db"),
                ("DATABASE_HOST", "db.internal"),
                ("DATABASE_NAME", "character_platform"),
            ]),
            &source,
        )
        .await
        .unwrap();
        let url = settings.get("DATABASE_URL").unwrap();
        let parsed: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(parsed.get_user(), Some("app_login"));
        assert_eq!(parsed.get_password(), Some(&b"p'a\\ss word@/"[..]));
        assert_eq!(parsed.get_dbname(), Some("character_platform"));
        assert_eq!(parsed.get_ports(), &[5432]);
        // Debug output names what was provided, never a value.
        let debug = format!("{settings:?}");
        assert!(
            debug.contains("DATABASE_URL") && !debug.contains("word"),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn each_secret_provides_its_settings_and_one_arn_is_fetched_once() {
        let source = Fixed(HashMap::from([
            ("arn:owner", r#"{"username":"owner","password":"o"}"#),
            (
                "arn:stripe",
                r#"{"secret_key":"sk_test_1","webhook_secret":"whsec_1"}"#,
            ),
            (
                "arn:view",
                r#"{"view_key":"0123456789abcdef0123456789abcdef"}"#,
            ),
            ("arn:a1111", r#"{"username":"gpu","password":"s3cret"}"#),
        ]));
        let settings = resolve(
            env(&[
                ("DATABASE_MIGRATION_SECRET_ARN", "arn:owner"),
                ("DATABASE_HOST", "db"),
                ("DATABASE_PORT", "6432"),
                ("DATABASE_NAME", "characters"),
                ("STRIPE_SECRET_ARN", "arn:stripe"),
                ("GALLERY_VIEW_KEY_SECRET_ARN", "arn:view"),
                ("GENERATOR_SECRET_ARN", "arn:a1111"),
                ("GENERATOR_PRIMARY_URL", "http://gpu-1.internal:7860"),
            ]),
            &source,
        )
        .await
        .unwrap();
        let owner: tokio_postgres::Config = settings
            .get("DATABASE_MIGRATION_URL")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(owner.get_user(), Some("owner"));
        assert_eq!(owner.get_ports(), &[6432]);
        assert_eq!(settings.get("DATABASE_URL"), None);
        assert_eq!(settings.get("STRIPE_SECRET_KEY").unwrap(), "sk_test_1");
        assert_eq!(settings.get("STRIPE_WEBHOOK_SECRET").unwrap(), "whsec_1");
        assert_eq!(
            settings.get("GALLERY_VIEW_KEY").unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            settings.get("GENERATOR_PRIMARY_URL").unwrap(),
            "http://gpu:s3cret@gpu-1.internal:7860/"
        );
        assert_eq!(settings.get("GENERATOR_SECONDARY_URL"), None);
        // The overlay answers secrets first, then the environment.
        let lookup = settings.overlay(|name| (name == "AUTH_ISSUER").then(|| "x".to_string()));
        assert_eq!(lookup("STRIPE_SECRET_KEY").unwrap(), "sk_test_1");
        assert_eq!(lookup("AUTH_ISSUER").unwrap(), "x");
    }

    #[tokio::test]
    async fn mistakes_name_the_variable_and_key_and_never_a_value() {
        let source = Fixed(HashMap::from([
            ("arn:db", r#"{"username":"app","pass":"hunter2"}"#),
            ("arn:text", "not json"),
        ]));
        let cases: [(&'static [(&str, &str)], &str); 6] = [
            (
                &[
                    ("DATABASE_SECRET_ARN", "arn:db"),
                    ("DATABASE_HOST", "h"),
                    ("DATABASE_NAME", "n"),
                ],
                "the secret named by DATABASE_SECRET_ARN is not a JSON object with a string `password`",
            ),
            (
                &[("DATABASE_SECRET_ARN", "arn:db"), ("DATABASE_NAME", "n")],
                "DATABASE_HOST is required with DATABASE_SECRET_ARN",
            ),
            (
                &[
                    ("DATABASE_SECRET_ARN", "arn:db"),
                    ("DATABASE_URL", "postgres://x@y/z"),
                ],
                "set DATABASE_SECRET_ARN or DATABASE_URL, not both",
            ),
            (
                &[("STRIPE_SECRET_ARN", "arn:text")],
                "the secret named by STRIPE_SECRET_ARN is not a JSON object with a string `secret_key`",
            ),
            (
                &[("GALLERY_VIEW_KEY_SECRET_ARN", "arn:missing")],
                "cannot read the secret named by GALLERY_VIEW_KEY_SECRET_ARN: ResourceNotFoundException: arn:missing",
            ),
            (
                &[
                    ("DATABASE_SECRET_ARN", "arn:db"),
                    ("DATABASE_HOST", "h"),
                    ("DATABASE_NAME", "n"),
                    ("DATABASE_PORT", "54x"),
                ],
                "DATABASE_PORT is invalid: `54x` is not a port number",
            ),
        ];
        for (pairs, expected) in cases {
            let error = resolve(env(pairs), &source).await.unwrap_err().to_string();
            assert_eq!(error, expected);
            assert!(!error.contains("hunter2"));
        }
        assert!(!any_named(&env(&[("DATABASE_URL", "postgres://x@y/z")])));
        assert!(any_named(&env(&[("STRIPE_SECRET_ARN", "arn:stripe")])));
    }
}
