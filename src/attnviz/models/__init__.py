"""Models: resolve `--model`, load once and cache (`loading`), record and edit attention (`capture`),
find modules by data flow (`architecture`), the GGUF cache, info without loading, and the
generation step recorder. Import from the submodule that defines a name."""
