"""Streamlit UI helpers for PneumoScope (pages stay thin; core does the work)."""
