"""The Gradio chat page (`supportbot serve`): ui.page.ChatPage builds and launches it; ui.format
holds what it shows as plain functions."""
