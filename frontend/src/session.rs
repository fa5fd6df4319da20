//! Who is signed in: the context every page reads (its own module, so pages need not import from main).

use leptos::prelude::*;
use repdiff_api::User;

#[derive(Clone, Copy)]
pub struct Session {
    pub me: RwSignal<Option<User>>,
}
