"""The Gradio chat page (`supportbot serve`). Not built yet: see the project's issues."""
