"""Chat templates: the bounded Jinja sandbox, the renderer, the substitution form, the families."""
