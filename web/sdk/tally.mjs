// tally.js as an ES module: `import Tally from "https://edge.example/tally.mjs"`.
import "./tally.js";

const Tally = globalThis.Tally;
export default Tally;
export const attach = Tally.attach;
export const sessionId = Tally.sessionId;
