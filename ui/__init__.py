"""The pages of `supportbot serve`: the customers' chat at / and the support team's page at /team
(behind the login). ui.page.ChatPage builds and launches both; ui.format holds what they show as
plain functions."""
