// Package tns reads and writes just enough of Oracle Net (TNS) for a layer-4
// proxy: packet headers, the connect data of a client's CONNECT (service
// name, program), and a listener's first answer (ACCEPT, REFUSE with its ORA
// error, REDIRECT, RESEND). It never reads credentials or SQL: those travel
// in DATA packets after the ACCEPT, which this package does not look into.
//
// Every parser takes untrusted bytes: lengths are checked against the bytes
// in hand and a caller's limit before anything is read or allocated, and
// bytes that end too early give ErrIncomplete, so a proxy can call again when
// more arrive.
//
// A proxy reading the app's opening bytes and the backend's first answer:
//
//	info, err := tns.ParseConnectData(opening)
//	switch {
//	case errors.Is(err, tns.ErrIncomplete):
//		// read more, up to the replay limit
//	case err == nil:
//		service, program := info.Description.ServiceName(), info.Description.Program()
//	}
//
//	first, err := tns.ClassifyFirst(fromBackend)
//	if err == nil && first.Type == tns.TypeRefuse {
//		if code, ok := first.Refuse.Err(); ok && code == 12514 {
//			// hold fromBackend[:first.Len], try the next server
//		}
//	}
//
// A health check on a fresh connection to a listener:
//
//	res, err := tns.Ping(ctx, conn) // res.Version is e.g. "19.0.0.0.0"
//
// Package tnstest has a fake listener for tests.
package tns
