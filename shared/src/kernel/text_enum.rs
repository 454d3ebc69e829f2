//! `text_enum!`: the words of the domain (tiers, account statuses,
//! visibilities...) as Rust enums stored as the seed's text values.
//!
//! Each generated enum is parsed once where a value enters (a row through
//! `FromSql`, a request through [`std::str::FromStr`] or serde) and written
//! back as its text (`ToSql`, serde, `Display`), so no code in between matches
//! strings. `ALL` and `NAMES` list the variants in declaration order, which is
//! also their `Ord` order.

#[doc(hidden)]
pub use bytes::BytesMut;

/// Declares an enum whose variants are stored as the given texts:
///
/// ```ignore
/// text_enum! {
///     /// A subscription tier, lowest first.
///     pub enum Tier { Free => "FREE", Pro => "PRO" }
/// }
/// ```
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:tt ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
            serde::Serialize, serde::Deserialize, utoipa::ToSchema,
        )]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// The stored texts, in declaration order.
            pub const NAMES: [&'static str; [$($text),+].len()] = [$($text),+];
            /// Every variant, in declaration order.
            pub const ALL: [$name; Self::NAMES.len()] = [$($name::$variant),+];

            /// The stored text.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }

            /// The variant stored as `text`; `None` for anything else.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::parse(text)
                    .ok_or_else(|| format!("`{text}` is not one of {}", Self::NAMES.join(", ")))
            }
        }

        impl<'a> tokio_postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let text = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
                Ok(text.parse::<$name>()?)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::FromSql>::accepts(ty)
            }
        }

        impl tokio_postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &tokio_postgres::types::Type,
                out: &mut $crate::kernel::text_enum::BytesMut,
            ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                tokio_postgres::types::ToSql::to_sql(&self.as_str(), ty, out)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::ToSql>::accepts(ty)
            }

            tokio_postgres::types::to_sql_checked!();
        }
    };
}

#[cfg(test)]
mod tests {
    crate::text_enum! {
        /// A test enum.
        pub enum Shade { Light => "light", Dark => "dark" }
    }

    #[test]
    fn texts_round_trip_and_order_is_declaration_order() {
        assert_eq!(Shade::NAMES, ["light", "dark"]);
        assert_eq!(Shade::ALL, [Shade::Light, Shade::Dark]);
        for (shade, text) in Shade::ALL.into_iter().zip(Shade::NAMES) {
            assert_eq!(shade.as_str(), text);
            assert_eq!(shade.to_string(), text);
            assert_eq!(Shade::parse(text), Some(shade));
            assert_eq!(serde_json::to_value(shade).unwrap(), text);
            assert_eq!(serde_json::from_value::<Shade>(text.into()).unwrap(), shade);
        }
        assert_eq!(Shade::parse("Light"), None);
        assert_eq!(
            "grey".parse::<Shade>().unwrap_err(),
            "`grey` is not one of light, dark"
        );
        assert!(serde_json::from_value::<Shade>("grey".into()).is_err());
        assert!(Shade::Light < Shade::Dark);
    }
}
