// connect.js CONNECT_STRING [CONNECT_TIMEOUT]: one node-oracledb (thin mode)
// getConnection (connectTimeout in seconds, 15 by default), as
// an app's pool does when it opens a connection. Prints one JSON line: ok,
// or the driver's error code, first message line and the rest of it (cause),
// and the time taken.
'use strict';
const oracledb = require('oracledb');

(async () => {
  const start = Date.now();
  try {
    const conn = await oracledb.getConnection({
      user: 'scott',
      password: 'tiger',
      connectString: process.argv[2],
      connectTimeout: Number(process.argv[3] || 15),
    });
    await conn.close();
    console.log(JSON.stringify({ ok: true, ms: Date.now() - start }));
  } catch (e) {
    console.log(JSON.stringify({
      ok: false, code: e.code, message: String(e.message).split('\n')[0],
      cause: String(e.message).split('\n').slice(1).join(' '), ms: Date.now() - start,
    }));
  }
})();
