"""The server: `streamlit run serve.py` serves the pages of app.py (the router) behind one
middleware, which gives every browser its session id as a cookie the page's scripts cannot read
(HttpOnly) and other sites cannot send (SameSite=Lax). A Streamlit page can only set a cookie from
its own script, which can never be HttpOnly; Streamlit's ASGI app (st.App) lets the server set it on
the page's own response instead.

`streamlit run app.py` still works: the page then sets the cookie itself (pages/_state.py)."""

import streamlit as st
from starlette.middleware import Middleware

from spap_service.sessions import SessionCookieMiddleware

app = st.App("app.py", middleware=[Middleware(SessionCookieMiddleware)])
