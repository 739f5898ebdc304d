// Makes world-map.json from the npm package @svg-maps/world@2.0.0 (CC BY 4.0, Victor
// Cazanave): the same countries, ids (ISO 3166-1 alpha-2, lower case), names and
// paths, with every coordinate rounded to one decimal (1.2 MB down to 0.8 MB; the map
// is 1010 units wide, so a choropleth does not show the difference).
//   npm pack @svg-maps/world@2.0.0 && tar xzf svg-maps-world-2.0.0.tgz
//   (add "type": "module" to package/package.json) && node make-world-map.mjs
import w from "./package/index.js";
import { writeFileSync } from "node:fs";

const round = (p) => p.replace(/-?\d*\.?\d+(e-?\d+)?/g, (x) => String(Math.round(parseFloat(x) * 10) / 10));
const out = { viewBox: w.viewBox, locations: w.locations.map((l) => ({ id: l.id, name: l.name, path: round(l.path) })) };
writeFileSync(new URL("./world-map.json", import.meta.url), JSON.stringify(out));
