"""The operators' dashboard: server-rendered pages and /api JSON over the product's query functions."""
