"""Notifications: one line per problem to chat, webhooks, email and Alertmanager, off the detection path."""
