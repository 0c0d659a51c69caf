//! Closed sets of names the CLI, scenarios and the world share (faults, client actions): one
//! enum per set, its canonical snake_case names, `Display`/`FromStr`, and the list of all
//! members. An unknown name is an error that lists the valid ones, never silently ignored.
//! Adding a member is one line in the enum's declaration.

/// Declares `enum $name { $Variant = "name", ... }` with `ALL`, `name()`, `Display` and `FromStr`.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Every member, in declaration order (the order draws and summaries use).
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// The valid names, comma-separated (for error messages and `--help`).
            pub fn names() -> String {
                Self::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|m| m.name() == s)
                    .ok_or_else(|| format!("unknown {} {s:?}; valid: {}", $what, Self::names()))
            }
        }
    };
}
