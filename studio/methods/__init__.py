"""The studio's methods: each takes the registry and plain settings (prompts, numbers, PIL
images) and returns its images with what it measured; tabs and the agent call the same functions."""
