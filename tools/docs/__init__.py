"""Generated documentation: the README's settings table (`settings_doc`)."""
