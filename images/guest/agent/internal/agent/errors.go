package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
)

// Error codes of ERROR frames (docs/guest-agent-protocol.md, "Errors").
const (
	CodeENOENT       = "ENOENT"
	CodeEACCES       = "EACCES"
	CodeEPERM        = "EPERM"
	CodeEROFS        = "EROFS"
	CodeEISDIR       = "EISDIR"
	CodeENOTDIR      = "ENOTDIR"
	CodeEEXIST       = "EEXIST"
	CodeENOTEMPTY    = "ENOTEMPTY"
	CodeEINVAL       = "EINVAL"
	CodeENOSPC       = "ENOSPC"
	CodeEXDEV        = "EXDEV"
	CodeELOOP        = "ELOOP"
	CodeEBUSY        = "EBUSY"
	CodeESRCH        = "ESRCH"
	CodeECONNREFUSED = "ECONNREFUSED"
	CodeETIMEDOUT    = "ETIMEDOUT"
	CodeUNSUPPORTED  = "UNSUPPORTED"
	CodeCANCELLED    = "CANCELLED"
	CodePROTOCOL     = "PROTOCOL"
	CodeLIMIT        = "LIMIT"
	CodeINTERNAL     = "INTERNAL"
)

// Error is what an ERROR frame carries.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Path    string `json:"path,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func newErr(code, path, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Path: path}
}

func invalid(format string, args ...any) *Error { return newErr(CodeEINVAL, "", format, args...) }

var errnoCodes = map[syscall.Errno]string{
	syscall.ENOENT:       CodeENOENT,
	syscall.EACCES:       CodeEACCES,
	syscall.EPERM:        CodeEPERM,
	syscall.EROFS:        CodeEROFS,
	syscall.EISDIR:       CodeEISDIR,
	syscall.ENOTDIR:      CodeENOTDIR,
	syscall.EEXIST:       CodeEEXIST,
	syscall.ENOTEMPTY:    CodeENOTEMPTY,
	syscall.EINVAL:       CodeEINVAL,
	syscall.ENOSPC:       CodeENOSPC,
	syscall.EDQUOT:       CodeENOSPC,
	syscall.EXDEV:        CodeEXDEV,
	syscall.ELOOP:        CodeELOOP,
	syscall.EBUSY:        CodeEBUSY,
	syscall.ETXTBSY:      CodeEBUSY,
	syscall.ESRCH:        CodeESRCH,
	syscall.ECONNREFUSED: CodeECONNREFUSED,
	syscall.ETIMEDOUT:    CodeETIMEDOUT,
	syscall.ENAMETOOLONG: CodeEINVAL,
}

var codeMessages = map[string]string{
	CodeENOENT:    "no such file or directory",
	CodeEACCES:    "permission denied",
	CodeEPERM:     "operation not permitted",
	CodeEROFS:     "read-only file system: the guest mounted this path read-only, so it cannot be changed",
	CodeEISDIR:    "is a directory",
	CodeENOTDIR:   "not a directory",
	CodeEEXIST:    "file exists",
	CodeENOTEMPTY: "directory not empty",
	CodeENOSPC:    "no space left on device",
	CodeEXDEV:     "cross-device move: source and target are on different file systems",
	CodeELOOP:     "too many levels of symbolic links",
}

// toError maps any error to an error that is an *Error, or to a nil interface for no error (never
// a typed nil: an `error` holding a nil *Error is not nil, and once made a frame's error crashed
// the op, leaving the host waiting for ever).
func toError(err error, path string) error {
	if e := asError(err, path); e != nil {
		return e
	}
	return nil
}

// asError maps any error to an *Error (nil for no error, a nil *Error included).
func asError(err error, path string) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		if e == nil {
			return nil
		}
		if e.Path == "" {
			e.Path = path
		}
		return e
	}
	if errors.Is(err, context.Canceled) {
		return newErr(CodeCANCELLED, path, "cancelled")
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && path == "" {
		path = pe.Path
	}
	var le *os.LinkError
	if errors.As(err, &le) && path == "" {
		path = le.Old
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if code, ok := errnoCodes[errno]; ok {
			msg := codeMessages[code]
			if msg == "" {
				msg = errno.Error()
			}
			if path != "" {
				msg = path + ": " + msg
			}
			return &Error{Code: code, Message: msg, Path: path}
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return newErr(CodeETIMEDOUT, path, "%v", err)
	}
	return newErr(CodeINTERNAL, path, "%v", err)
}
