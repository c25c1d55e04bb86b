"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with a status code."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from .schemas import ErrorDetail, ErrorResponse

#: The ``type`` OpenAI uses for each status code.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error to answer with; its message is shown to the client, so it holds no internals."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "invalid_request_error")

    def detail(self) -> ErrorDetail:
        return ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=self.detail()).model_dump()
        return JSONResponse(body, status_code=self.status, headers=self.headers)
